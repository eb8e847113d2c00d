"""miras_ref: the pure-NumPy gold reference of MIRAS (arXiv 2504.13173).

Every function is tied to an equation of the paper (see :mod:`miras_ref.equations`). The
four design choices live in :mod:`~miras_ref.memory`, :mod:`~miras_ref.bias`,
:mod:`~miras_ref.retention` and :mod:`~miras_ref.algorithms`; :func:`scan` runs any
combination token by token and :func:`scan_chunked` in the chunk-parallel training form;
:mod:`~miras_ref.zoo` names every model of Table 1 and Moneta, Yaad and Memora.
"""

from . import algorithms, bias, memory, retention, zoo
from .algorithms import memory_weights
from .attention import attention
from .chunked import scan_chunked
from .config import MirasConfig
from .recurrent import read_memory, scan

__all__ = [
    "MirasConfig",
    "algorithms",
    "attention",
    "bias",
    "memory",
    "memory_weights",
    "retention",
    "read_memory",
    "scan",
    "scan_chunked",
    "zoo",
]
__version__ = "0.1.0"
