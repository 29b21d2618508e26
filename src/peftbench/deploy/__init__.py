"""Deployment targets: the forms a fine-tuned model ships in (ONNX, quantised) and the runtimes that run them."""
