"""Datasets (TFDS builders written as array_record, read without TensorFlow) and the grain
input pipeline.

    sources/    readers of user formats (COCO json, VIA json, PNG masks), image files, input
                hygiene, and the synthetic `shapes` renderer
    builders/   TFDS builders (shapes, coco_instances, custom_instances), the record format,
                COCO ground truth of a split, the tiny_coco folder writer
    pipeline/   records -> batches: per-example preparation, shape buckets, transforms
    datasets.py config -> the datasets a run needs (the one entry the trainer and
                `msrcnn.evaluate` use)

A training / evaluation batch is a dict of numpy arrays with static shapes
(B batch, M max instances, S mask crop size, H x W the padded input size):

    images      uint8   [B, H, W, 3]  RGB, resized, zero-padded at the bottom/right
    image_hw    int32   [B, 2]        (h, w) of the resized image inside the padding
    gt_boxes    float32 [B, M, 4]     xyxy in input pixels (zeros in padding)
    gt_classes  int32   [B, M]        contiguous classes 1..K (0 in padding)
    gt_masks    uint8   [B, M, S, S]  each instance's mask cropped to its box, resized to S x S,
                                      values 0..255 (mask probability x 255; 0 in padding)
    gt_valid    bool    [B, M]        True for real instances
    image_id    int64   [B]           dataset image id (-1 for padding images)
    orig_hw     int32   [B, 2]        original image size (boxes/masks map back by
                                      orig / image_hw per axis)

Normalisation (mean/std) happens on device, so the host ships uint8.
"""
