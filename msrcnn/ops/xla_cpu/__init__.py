"""What exists only for XLA:CPU speed: used only where the model's `conv_impl` is
"cpu_matmul" (config `model.conv_impl`; "auto" picks it on CPU only), chosen once when the
config becomes a model. GPU / TPU run XLA's own convolutions and gradients.

  * conv: a convolution whose kernel gradient is one matmul per kernel tap (XLA:CPU runs its
    own kernel-gradient convolutions far below its matmul speed), and, for convolutions that
    run inside a conditional (the train step's mask branch), whose input gradient is written
    as forward ops (XLA:CPU's transposed convolutions are slow inside a conditional).

Same values and gradients as XLA's convolution up to float rounding. The measurements
behind each choice are in benchmarks/README.md.
"""
