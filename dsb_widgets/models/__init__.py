"""Model definitions: vision classifiers (``vision``) and language models (``gpt``, ``bert``)."""
