"""Work done once and reused: fingerprints of what defines a result (`fingerprint`), the locked, atomic cache
of trained models (`models`), teacher outputs looked up by sample index (`teacher_outputs`) and the training
checkpoints a killed run resumes from (`checkpoints`)."""
