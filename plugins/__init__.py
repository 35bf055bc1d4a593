"""The built-in surgeon plugins (installed as ``surgeon_plugins``), one folder per kind of plugin.

Each plugin lives in a module named after it, under the folder of its kind::

    sources/onnx_file.py         onnx_file      an .onnx file
    sources/torch/               torch          a PyTorch model, exported (checkpoints.py: reading --weights)
    passes/dynamic_batch/        dynamic_batch  (flow.py: how the batch flows through the graph)
    passes/pool_fix.py           pool_fix
    passes/gru_fix.py            gru_fix
    passes/opset_compat/         opset_compat
    passes/rename_outputs.py     rename_outputs
    converters/onnx_tf/          onnx_tf        (compat.py: onnx-tf on today's TensorFlow; support.py: its operators;
                                                layout.py, graph_rewrites.py: the SavedModel laid out to serve)
    writers/onnx.py              onnx           OUT/model.onnx, always written
    writers/saved_model.py       saved_model
    writers/frozen_pb.py         frozen_pb
    writers/triton.py            triton
    writers/tf_serving.py        tf_serving

A plugin that needs more than one module is a package; the modules beside its ``__init__.py`` are its own helpers,
not plugins. ``examples/`` holds the example models ``example:NAME`` names. The plugins are registered through the
``surgeon`` entry-point group in setup.cfg, exactly as third-party plugins are.
"""
