"""Deployable models: ONNX export, static int8 quantization with ONNX Runtime, DoReFa to real int8 (docs/deploy.md).

Pure torch / onnx / onnxruntime; the ``imbcompress export`` and ``imbcompress ptq`` commands live in
:mod:`imbcompress.deploy.command`. ``onnx`` and ``onnxruntime`` come with the ``deploy`` extra.
"""
