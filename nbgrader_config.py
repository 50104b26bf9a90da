"""nbgrader settings for Fine-Tuning Lab. The course root is this folder."""
import os

from nbgrader.preprocessors import CheckCellMetadata, ClearOutput, Execute, IgnorePattern

c = get_config()  # noqa: F821 (provided by nbgrader)

c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
c.CourseDirectory.course_id = "fine-tuning-lab"

# What students see in place of a solution.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Each cell may run for this long when a notebook is validated or graded (lessons train for a few
# steps only in grading mode, see course.quick_mode()).
c.Execute.timeout = 180
c.Execute.kernel_name = "python3"

# Deleted grade cells come back at grading time instead of waiting for manual grading (nbgrader #1682).
c.OverwriteCells.add_missing_cells = True

# A test cell passes when it raises no error. TensorFlow and PyTorch write warnings to stderr, and
# nbgrader would fail a cell for any stderr text: drop stderr from graded output, in grading and in
# the students' Validate button alike. Errors are not stderr streams and still fail the cell.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"[\s\S]"
# nbgrader 0.9.6's Validator.preprocessors is not a configurable trait, so `c.Validator.preprocessors`
# is ignored; set the class default instead (this file is executed by every nbgrader command and by
# the Validate button's server extension, so the change applies wherever this course is validated).
from nbgrader.validator import Validator  # noqa: E402

Validator.class_traits()["preprocessors"].default_args = ([CheckCellMetadata, ClearOutput, Execute, IgnorePattern],)

# Keep a flooding submission from producing gigantic notebooks.
c.LimitOutput.max_lines = 1000
c.LimitOutput.max_traceback = 100
