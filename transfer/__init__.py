"""Transfer stage: load a pretrained AlexNet trunk into PASCAL VOC harnesses."""
