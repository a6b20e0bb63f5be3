"""Fast R-CNN detection on PASCAL VOC2007 with a transferred AlexNet trunk (Pathak et al. 2016, Table 2 "det").

Modules: ``proposals`` (selective search with an on-disk cache, R-CNN ``.mat`` import), ``boxes`` (regression target
coder, IoU, clipping), ``model`` (the network), ``data`` (VOC images, ground truth, RoI sampling), ``train`` (loss,
SGD step and loop) and ``evaluate`` (NMS, devkit AP, results files). The protocol is in docs/protocols/detection.md.
"""
