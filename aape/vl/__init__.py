"""Vision-language AAPE: human captions as the prompts, image-text retrieval."""
