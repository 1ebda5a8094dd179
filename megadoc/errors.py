"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class MegadocError(Exception):
    """Bad input or a bad plan: the message is the whole story, one line, naming the file (and line) at fault."""
