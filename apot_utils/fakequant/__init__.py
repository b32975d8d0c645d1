"""The fake-quantized model world: quantizers, layers, models, ModelSpec, loading, evaluation, post-training
quantization, training."""
