fn main() {
    println!("chunkd: not yet implemented");
}
