"""Format checks for the quiz answers. No correct answer lives here: the graded comparison is hidden.

Question N is answered by assigning one letter to ``answer_qN``, e.g. ``answer_qN = "B"``.
``answer_letter(globals(), 1)`` reads ``answer_q1`` from the notebook and returns the letter it spells:
surrounding spaces are dropped and lower case is read as upper case (``" b "`` counts as ``"B"``).
Anything else (no answer yet, ``None``, a number, ``"AB"``, ``"E"``, ``""``) raises AssertionError with a
message that says what is wrong; the question then scores zero.
"""
import builtins

# Captured at import, so that a notebook that redefines these names cannot change how answers are read.
_str = builtins.str
_dict = builtins.dict
_type = builtins.type
_issubclass = builtins.issubclass
_repr = builtins.repr
_len = builtins.len
_strip = builtins.str.strip
_upper = builtins.str.upper
_dict_contains = builtins.dict.__contains__
_dict_getitem = builtins.dict.__getitem__

OPTIONS = ("A", "B", "C", "D")
_HOW = 'assign one of "A", "B", "C", "D" to answer_q{n}: a single capital letter in quotes'


def normalised_letter(value):
    """The option letter ``value`` spells ("A".."D"), or None when it spells none.

    Only strings count; surrounding spaces are ignored and lower case is accepted.
    """
    if not _issubclass(_type(value), _str):
        return None
    letter = _upper(_strip(value))  # unbound str methods: a plain str comes back, even from a str subclass
    return letter if letter in OPTIONS else None


def _shown(value):
    try:
        text = _repr(value)
    except Exception:
        text = "an object of type " + _type(value).__name__
    return text if _len(text) <= 40 else text[:37] + "..."


def what_is_wrong(value, question):
    """A sentence saying why ``value`` is not a valid answer to ``question`` (None when it is valid)."""
    if normalised_letter(value) is not None:
        return None
    name = "answer_q%d" % question
    if value is None:
        problem = "%s is None, so question %d is not answered yet" % (name, question)
    elif not _issubclass(_type(value), _str):
        problem = "%s is %s (type %s), not a letter" % (name, _shown(value), _type(value).__name__)
    elif _len(_strip(value)) == 0:
        problem = "%s is an empty string" % name
    elif _len(_strip(value)) > 1:
        problem = "%s is %s: choose exactly one letter" % (name, _shown(value))
    else:
        problem = "%s is %s, which is not one of the options" % (name, _shown(value))
    return "Question %d: %s; %s." % (question, problem, _HOW.format(n=question))


def answer_letter(namespace, question):
    """The letter the notebook assigned to ``answer_q<question>``; AssertionError if missing or malformed."""
    name = "answer_q%d" % question
    if _type(namespace) is not _dict or not _dict_contains(namespace, name):
        raise AssertionError("Question %d is not answered yet: %s is not defined. In the answer cell above, "
                             "replace the placeholder lines (# YOUR CODE HERE / raise ...), %s, and run that cell."
                             % (question, name, _HOW.format(n=question)))
    value = _dict_getitem(namespace, name)
    problem = what_is_wrong(value, question)
    if problem is not None:
        raise AssertionError(problem)
    return normalised_letter(value)
