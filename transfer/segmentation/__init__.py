"""FCN semantic segmentation on PASCAL VOC2012 with a transferred AlexNet encoder (Pathak et al. 2016, Table 2 "seg").

- ``model``: FCN-32s/16s/8s on the AlexNet trunk, alignment by composed coordinate maps;
- ``data``: VOC2012 (+ SBD) items, up-front mask checks, the training/evaluation dataset;
- ``train``: loss, FCN-AlexNet's SGD settings, ``train_step`` and the (DDP) training loop;
- ``evaluate``: one confusion matrix over the split, summed over ranks;
- ``protocol``: ``SegmentationConfig`` and ``run_segmentation`` tying them together into a run record.

Metrics live in ``transfer.segmentation_iou``; the protocol is written out in docs/protocols/segmentation.md.
"""
