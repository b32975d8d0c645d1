"""Deployment: the quantized model as an ONNX file that ONNX Runtime runs (needs the ``deploy`` extra)."""
