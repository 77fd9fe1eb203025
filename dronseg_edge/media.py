"""Which files are images, by suffix: shared by the data set reader, export's image sets and the
inference pipeline's folder sources (which must not import the data package and its PIL)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
