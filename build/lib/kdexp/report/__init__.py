"""`kdexp-report`: benchmark tables (Markdown, LaTeX, CSV) and figures from the student runs in MLflow.

collect (MLflow runs -> records under one selection rule) -> table (mean ± std over seeds, Δ, best)
-> render (md/tex/csv), plots, reference (published numbers); cli ties them together.
"""
