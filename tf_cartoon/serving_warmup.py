"""TF Serving's warm-up file: ``assets.extra/tf_serving_warmup_requests`` in a SavedModel version folder.

TF Serving replays the requests of that file when it loads the version, before it serves it, so the lazy work of
a model's first call (graph optimisation, function instantiation, kernel and oneDNN primitive set-up: seconds
for a generator) happens at load time, not in a user's first request. The file is a TFRecord file of
``tensorflow.serving.PredictionLog`` protobufs, one Predict request per record.

The records are written here in protobuf's wire format directly (the TensorProto of each input is TensorFlow's
own ``make_tensor_proto(...).SerializeToString()``), so exporting needs no tensorflow-serving-api package. The
field numbers are those of tensorflow_serving/apis (prediction_log.proto, predict.proto, model.proto):

  PredictionLog   predict_log = 6 (PredictLog)
  PredictLog      request = 1 (PredictRequest)
  PredictRequest  model_spec = 1 (ModelSpec), inputs = 2 (map<string, TensorProto>: entries {key = 1, value = 2})
  ModelSpec       name = 1 (string), signature_name = 3 (string)
"""

from __future__ import annotations

import os

FILE = "tf_serving_warmup_requests"
DIR = "assets.extra"

_LEN = 2  # wire type of length-delimited fields (strings, bytes, messages)

# Field numbers (see the module docstring).
PREDICTION_LOG_PREDICT_LOG = 6
PREDICT_LOG_REQUEST = 1
PREDICT_REQUEST_MODEL_SPEC, PREDICT_REQUEST_INPUTS = 1, 2
MAP_ENTRY_KEY, MAP_ENTRY_VALUE = 1, 2
MODEL_SPEC_NAME, MODEL_SPEC_SIGNATURE_NAME = 1, 3


def varint(n: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer (7 bits per byte, low bits first)."""
    if n < 0:
        raise ValueError(f"varint of a negative number: {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number: int, payload: bytes | str) -> bytes:
    """One length-delimited field: its key (number, wire type 2), the payload's length, the payload."""
    data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    return varint(number << 3 | _LEN) + varint(len(data)) + data


def predict_request(model_name: str, signature_name: str, inputs: dict) -> bytes:
    """A serialized PredictRequest; inputs: {name: array-like}, each turned into a TensorProto by TensorFlow."""
    import tensorflow as tf

    spec = field(MODEL_SPEC_NAME, model_name) + field(MODEL_SPEC_SIGNATURE_NAME, signature_name)
    body = field(PREDICT_REQUEST_MODEL_SPEC, spec)
    for key in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[key]).SerializeToString()
        body += field(PREDICT_REQUEST_INPUTS, field(MAP_ENTRY_KEY, key) + field(MAP_ENTRY_VALUE, tensor))
    return body


def prediction_log(request: bytes) -> bytes:
    """A serialized PredictionLog holding ``request`` (a serialized PredictRequest) as its predict_log."""
    return field(PREDICTION_LOG_PREDICT_LOG, field(PREDICT_LOG_REQUEST, request))


def write(version_dir: str, model_name: str, requests: list) -> str:
    """Write ``<version_dir>/assets.extra/tf_serving_warmup_requests``: one PredictionLog record per
    (signature_name, inputs) of ``requests``. Returns the file's path."""
    import tensorflow as tf

    folder = os.path.join(version_dir, DIR)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            writer.write(prediction_log(predict_request(model_name, signature_name, inputs)))
    return path
