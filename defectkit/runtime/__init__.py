"""What runs after training, on a line PC or a server: a bundle's model and its inference
graph (graph.py), the Inspector over the torch or ONNX backend (inspector.py), ONNX export
and its parity check (export.py), and a bundle's metrics on labelled images (evaluate.py).
It sits above the tasks: it finds a bundle's task by name in their registry and asks it for
the model, the graph's head and the decision."""
