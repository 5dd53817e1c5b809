"""Stand-in for numba on the offline GPU kit: Axolotl imports numba only for sample packing's
multipack sampler (``@numba.njit``); with sample_packing: false nothing here runs. The decorator
returns the plain Python function, so packing would still work, only slower."""

__version__ = "0.0+kit-shim"


def njit(*args, **kwargs):
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda function: function


jit = njit
