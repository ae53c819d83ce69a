"""track1: a PaddlePaddle pipeline for the CVPR 2022 NAS challenge, Track 1 (supernet ranking)."""
import warnings

# Paddle's C++-extension module warns "No ccache found" when Paddle is imported: nothing here compiles
# an extension, so the notice says nothing true to a library user or a notebook. A filter on that
# one message from that one module, set once here, where every import of the package passes.
warnings.filterwarnings("ignore", message="No ccache found", category=UserWarning,
                        module=r"paddle\.utils\.cpp_extension")
