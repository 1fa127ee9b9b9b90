fn main() {
    println!("mirrord: not yet implemented");
}
