#!/usr/bin/env bash
# Wheels for a lent GPU machine (docs/gpu.md): the packages fomo_nnunet needs that the machine's image lacks,
# for its Python 3.12 on x86-64, in two folders, each under the 64 MiB a device call may carry with the checkout:
#   .whl/sitk  SimpleITK alone (about 53 MB)      .whl/rest  everything else, fomo_nnunet too (about 35 MB)
# Run in the repository root on a machine with pip and network access; .whl/ is added to .git/info/exclude.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-path info/exclude)"
rm -rf .whl && mkdir -p .whl/sitk .whl/rest
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download -q --no-deps "${PLAT[@]}" -d .whl/sitk 'SimpleITK>=2.2.1'
# nnU-Net 2.8.1 and what it, dynamic-network-architectures, batchgenerators, blosc2 and our package import that
# the image (KINDS.md's list) does not hold
python3 -m pip download -q --no-deps "${PLAT[@]}" -d .whl/rest nnunetv2==2.8.1 'dynamic-network-architectures>=0.4.4,<0.5' \
  'batchgenerators>=0.25.1' 'batchgeneratorsv2>=0.3.2' 'blosc2>=3.3.2' ndindex numexpr nibabel nilearn graphviz yacs \
  surface-distance connected-components-3d pydantic pydantic-core annotated-types typing-inspection future \
  unittest2 traceback2 linecache2 'timm<1.0.23'
# acvl-utils is published as a source archive only: build its (pure Python) wheel here; and this checkout's own
# wheel (plans/ and trainers/ inside fomo_nnunet/, as installed): run this script after the last commit
python3 -m pip download -q --no-deps --no-binary=:all: -d .whl/build 'acvl-utils>=0.2.6,<0.3'
python3 -m pip wheel -q --no-deps -w .whl/rest .whl/build/acvl_utils-*.tar.gz .
rm -rf .whl/build
du -sh .whl/sitk .whl/rest
