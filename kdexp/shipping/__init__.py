"""Getting a student out of kdexp: ONNX and torch.export files checked against ONNX Runtime (`export`), the
int8 ONNX of a quantized student (`int8`), eager-mode quantization-aware training (`quantization`) and the
`kdexp-export` command (`cli`)."""
