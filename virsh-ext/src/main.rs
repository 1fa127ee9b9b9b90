fn main() {
    println!("blobvirt: not yet implemented");
}
