"""Run directories and what goes in them: the job, artifacts, tables, plots and media."""
