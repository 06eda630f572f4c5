"""The one exception type for mistakes a user can fix (bad config, bad data, bad path).

Command-line entry points turn it into a one-line message on stderr and exit status 2.
"""


class UserError(Exception):
    """A problem with the user's input, described in one line that names it."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (whitespace collapsed), or its type's name when empty,
    for the one-line messages ``UserError`` promises."""
    return " ".join(str(err).split()) or type(err).__name__
