"""The one base class of errors a user can cause and fix; `launch.py` prints their message."""


class UserError(Exception):
    """Bad input (config, data, workdir, flags): the message is one sentence naming the thing
    and the fix, shown without a traceback."""
