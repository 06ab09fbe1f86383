"""Distil a small student from a larger teacher with keras.distillation + tfcompress losses.

    TFCOMPRESS_DATA_DIR=../shared/data .venv/bin/python examples/distill.py [--quick]
"""

import sys

import keras

from tfcompress import data, distillation, pipeline

quick = "--quick" in sys.argv
ds = data.load_dataset("mnist")
x, y = ds.x_train.astype("float32"), ds.y_train  # small_cnn rescales 0-255 itself
x, y = (x[:4096], y[:4096]) if quick else (x, y)
xt, yt = ds.x_test.astype("float32"), ds.y_test
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
teacher = pipeline.small_cnn(ds.input_shape, ds.num_classes)
teacher.compile("adam", loss, metrics=["accuracy"])
teacher.fit(x, y, epochs=4 if quick else 8, batch_size=32, verbose=0)

inputs = keras.Input(ds.input_shape)
h = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
student = keras.Model(inputs, keras.layers.Dense(ds.num_classes)(
    keras.layers.GlobalAveragePooling2D()(h)))
distiller = keras.distillation.Distiller(
    teacher=teacher, student=student, student_loss_weight=0.1,
    distillation_losses=[distillation.SoftTargetDistillation(temperature=4.0)])
distiller.compile(optimizer="adam", loss=loss)
distiller.fit(x, y, epochs=2 if quick else 5, batch_size=64, verbose=0,
              callbacks=[distillation.TemperatureSchedule(lambda epoch: max(1.0, 4.0 - epoch))])
student.compile(metrics=["accuracy"], loss=loss)
print(f"teacher {teacher.evaluate(xt, yt, verbose=0)[1]:.4f} ({teacher.count_params()} params), "
      f"student {student.evaluate(xt, yt, verbose=0)[1]:.4f} ({student.count_params()} params)")
