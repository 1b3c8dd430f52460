"""Models: the multimodal fusion layer (MFL), SAL's sparse attention and the SAL user encoder."""
