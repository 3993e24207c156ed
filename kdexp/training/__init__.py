"""How a model is trained and recorded, written once; every experiment kind (kdexp/experiments) composes these.

    context     Context: the run's frozen config, data, tracker, model cache, run folder; builds models
    lifecycle   tracked_run: one MLflow run's life (FINISHED / FAILED with the error / KILLED + PRUNED)
    trainer     fit: one Lightning stage (cached teacher outputs, data placement, trainer settings)
    evaluation  evaluate: test metrics and deployment costs of a model; agreement with the teacher
    alone       train_alone / resolve_teacher / vanilla_baseline: models trained on hard labels, cached
    distilled   train_distilled (a method's init stage + distillation + best-val), finetune, cached links
    results     student_run + report_student: the reported student run, its metrics, summary and weights

Layers: kdexp.cli -> kdexp.experiments -> kdexp.training -> kdexp.modules.distill and the leaves (methods, models,
data, caches, tracking, sweep). Nothing here imports kdexp.experiments or kdexp.cli.
"""
