"""Fine-Tuning Lab grading pipeline (see ``python -m autograder --help``)."""
