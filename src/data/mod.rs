//! Real datasets: IDX (MNIST, Fashion-MNIST) and CIFAR-10 binary readers, splits, batching.
