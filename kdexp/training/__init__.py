"""How a model is trained and recorded, written once; every experiment kind (kdexp/variants) composes these.

    run         RunIdentity (config, tracker, model cache, run folder, the keys naming its runs) and what
                recording needs no data for: open_run, cached_model, log_config, write_summary, log_table
    context     Context: an image experiment = its RunIdentity + its data module; builds models
    lifecycle   tracked_run: one MLflow run's life (FINISHED / FAILED with the error / KILLED + PRUNED)
    trainer     fit: one Lightning stage (cached teacher outputs, data placement, trainer settings)
    evaluation  evaluate: test metrics and deployment costs of a model; agreement with the teacher
    alone       train_alone / resolve_teacher / vanilla_baseline: models trained on hard labels, cached
    distilled   train_distilled (a method's init stage + distillation + best-val; a StageSpec says how a kind
                differs), finetune, cached links
    results     student_run + report_student (a ReportSpec instead of flags) + report_link: the reported
                student run, its metrics, summary and weights

No public function here takes more than 6 parameters (tests/test_layers.py); docs/training_api.md shows how a
kind composes them. Layers: kdexp.cli -> kdexp.variants -> kdexp.training -> kdexp.modules and the leaves
(methods, models, data, caches, tracking, sweep). Nothing here imports kdexp.variants or kdexp.cli.
"""
