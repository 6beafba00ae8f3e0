"""Where data comes from: readers of user formats and the synthetic renderer.

  * `coco_json`, `via_json`, `png_masks`: annotation files (COCO json, VIA region json, Open
    Images-style PNG masks) -> `annotations.ImageAnnotation`s;
  * `annotations`: the hygiene every reader's output goes through before it is stored;
  * `image_io`: image files -> RGB uint8; `bad_input`: what a problem raises or skips;
  * `shapes_render`: one synthetic `shapes` image (numpy + PIL).

Nothing here imports TensorFlow Datasets; `msrcnn.data.builders` stores what these read.
"""
