"""VLMs as consumers of compressed images: the rate-accuracy benchmark and the codec-conditioned adaptor."""
