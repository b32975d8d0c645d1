"""The integer world: codes and exact integer arithmetic, integer layers, conversion from a fake-quantized
model, the exported file format, verification, costs."""
