"""Build fastmoco: the pure-Python package, the Triton kernels (``kernels/`` -> ``fastmoco.kernels``) and the
native ring-buffer extension ``fastmoco._C`` (``csrc/``).

Environment switches:
  FASTMOCO_CUDA=1           also compile the CUDA kernel (default: only when torch sees a GPU)
  FASTMOCO_NO_NATIVE=1      skip the C++ extension entirely (the ops fall back to the PyTorch reference)
  FASTMOCO_REQUIRE_NATIVE=1 fail the install when the extension does not build (CI uses this)
CUDA_HOME defaults to /usr/local/cuda (torch's auto-detection can pick /usr/local, where linking -lcudart fails),
and TORCH_CUDA_ARCH_LIST to 9.0 when no GPU is visible (without a GPU the build cannot detect an architecture).
"""
import os
import warnings

from setuptools import find_packages, setup

packages = find_packages(include=["fastmoco", "fastmoco.*"]) + ["fastmoco.kernels"]
package_dir = {"fastmoco.kernels": "kernels"}
ext_modules, cmdclass = [], {}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


if not _flag("FASTMOCO_NO_NATIVE"):
    import torch
    from torch.utils import cpp_extension

    want_cuda = _flag("FASTMOCO_CUDA") or torch.cuda.is_available()
    sources = ["csrc/enqueue.cpp", "csrc/ema.cpp"]
    extra = {"cxx": ["-O3"]}
    if want_cuda:
        os.environ.setdefault("CUDA_HOME", "/usr/local/cuda")
        cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources.append("csrc/enqueue_cuda.cu")
        extra["cxx"].append("-DFASTMOCO_WITH_CUDA")
        extra["nvcc"] = ["-O3", "-DFASTMOCO_WITH_CUDA"]
        ext = cpp_extension.CUDAExtension("fastmoco._C", sources, extra_compile_args=extra)
    else:
        ext = cpp_extension.CppExtension("fastmoco._C", sources, extra_compile_args=extra)
    ext_modules.append(ext)

    class OptionalBuildExt(cpp_extension.BuildExtension):
        """A failed native build leaves a working pure-PyTorch package, unless FASTMOCO_REQUIRE_NATIVE=1."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001 - any compiler failure
                if _flag("FASTMOCO_REQUIRE_NATIVE"):
                    raise
                warnings.warn(f"fastmoco: native extension not built ({exc}); ops use the PyTorch reference")

    cmdclass["build_ext"] = OptionalBuildExt.with_options(use_ninja=False)

setup(
    name="fastmoco",
    version="0.1.0",
    description="Fast, trustworthy MoCo v1/v2 with fused InfoNCE, EMA and queue ops",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=["torch>=2.4", "torchvision", "pyyaml", "tqdm", "tensorboard", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark"], "triton": ["triton"]},
    entry_points={
        "console_scripts": [
            "fastmoco-train=fastmoco.cli.train:main",
            "fastmoco-export=fastmoco.cli.export:main",
            "fastmoco-lincls=fastmoco.cli.lincls:main",
            "fastmoco-convert=fastmoco.cli.convert:main",
            "fastmoco-shards=fastmoco.cli.shards:main",
            "fastmoco-detect=fastmoco.cli.detect:main",
            "fastmoco-scenes=fastmoco.cli.scenes:main",
        ]
    },
)
