"""Reading the printed symbols: localisation, the decode cascade, grading, the failed-frame archive.

OpenCV runs in the calling thread here. Its own worker pool (one thread per core by default)
spins on ``sched_yield`` between calls: measured on the 2-core line benchmark, 246 such calls
per unit and about 0.3 ms of CPU per unit spent waiting, taken from the event loop, the state
writer and the devices. Frames are decoded in parallel by the line's decode threads already, and
a frame's own OpenCV calls are too small to gain from a pool (wall time equals the thread's CPU
time on the wide benchmark set either way).
"""

import cv2

cv2.setNumThreads(0)
