"""The building blocks of binary networks: sign functions with surrogate gradients (functional),
the quantizers that binarize weights and activations (quantizers), the binary convolution every
model is built from (layers), and the exact 1-bit fast paths BinaryConv2d takes in eval and in
training on CPU (_packed_eval, _packed_train). Above bnnkit.native, below methods and models."""
