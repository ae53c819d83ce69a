"""The network: the oneDNN convolution (onednn, conv), dynamic layers (layers), the supernet (supernet) and
the plain ResNet of one subnet (resnet)."""
