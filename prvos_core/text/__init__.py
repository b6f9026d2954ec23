"""Expression text: the `transformers` encoder (`encoder`) and the Zarr cache of token embeddings, each
distinct expression encoded once per encoder (`cache`)."""
