"""The grain input pipeline: records -> fixed-shape batches (numpy, on the host).

* `pipeline`: one image size: per-example preparation, training iterator, eval batches;
* `buckets`: a few static sizes (shape buckets) chosen per image;
* `transforms`: the geometry both use (flip, resize rule, bilinear resize, mask crops).
"""
