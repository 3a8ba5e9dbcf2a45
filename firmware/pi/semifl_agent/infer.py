"""int8 inference on the Pi with LiteRT (ai-edge-litert, no TensorFlow): the model `semifl models
export` wrote, pixels in, classes out. Optional: the agent trains without it."""
from __future__ import annotations

import numpy as np


class LiteRTClassifier:
    def __init__(self, path: str, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.inp = self.it.get_input_details()[0]
        self.out = self.it.get_output_details()[0]
        self.scale, self.zp = self.inp["quantization"]
        if self.inp["dtype"] != np.int8 or not self.scale:
            raise ValueError(f"{path}: not a full-integer model (input {self.inp['dtype']}, scale {self.scale})")

    def quantize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> the model's int8 input (its input is pixel / 255)."""
        x = np.asarray(pixels, np.float32) / np.float32(255)
        return np.clip(np.round(x / np.float32(self.scale)) + self.zp, -128, 127).astype(np.int8)

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        x = self.quantize(pixels.reshape(len(pixels), -1))
        self.it.resize_tensor_input(self.inp["index"], x.shape)
        self.it.allocate_tensors()
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        return self.it.get_tensor(self.out["index"]).copy()

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        return self.logits(pixels).argmax(axis=1)
