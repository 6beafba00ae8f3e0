"""COCO evaluation of Detections: results json (RLE masks), COCOeval, plain vs mask scoring."""
