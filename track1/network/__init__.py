"""The network: the oneDNN convolution (onednn, conv), dynamic layers (layers), the supernet (supernet), sub-supernets
of a few-shot split (fewshot), the plain ResNet of one subnet (resnet), mixed precision (precision), a trained full
network's weights (pretrained), and building them from a config (build)."""
