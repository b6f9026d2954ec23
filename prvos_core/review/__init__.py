"""Review loop formats: the queue of uncertain frames (`queue`), Label Studio tasks and results (`label_studio`), COCO RLE (`coco`)."""
