//! GGUF reader (llama.cpp's file format): metadata, tensor directory, dequantisation (F32, F16, Q8_0,
//! Q4_1) to f32 tensors. Stub until the SmolLM2 loader lands.
