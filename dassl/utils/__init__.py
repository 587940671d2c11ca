from .tools import *  # noqa: F401,F403
from .logger import *  # noqa: F401,F403
from .meters import *  # noqa: F401,F403
from .registry import Registry  # noqa: F401
from .torchtools import *  # noqa: F401,F403
from .dist import *  # noqa: F401,F403
from .progress import *  # noqa: F401,F403
