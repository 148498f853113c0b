"""Set-up shared by the tests and the doctests of ``src/``: torchvision, and with it timm,
Lightning and the transformers Trainer, import with the CPU build of torch
(``tests/torchvision_shim.py``). Test-only: bnkit never imports them itself."""

from tests.torchvision_shim import install

install()
