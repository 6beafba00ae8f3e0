"""Weights from other frameworks: reading state dict files, tensor layouts, torchvision's names.

  * `loading`: a .pth / .pt (torch) or .npz (numpy) file -> {name: numpy array};
  * `layouts`: PyTorch tensor layouts -> Flax ones, and BatchNorm folding;
  * `torchvision`: torchvision's Mask R-CNN / ResNet names -> msrcnn parameters, with the
    layers torchvision lacks freshly initialised.

The command line is `python -m msrcnn.convert`.
"""
