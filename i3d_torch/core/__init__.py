"""Core: errors, file I/O, the model, transforms, video decoding and optical flow. Imports nothing above it."""
