"""ImageBind-Huge: the model (vision, text and audio trunks), its CLIP tokenizer, its media
decoding and preprocessing, and its weights."""
